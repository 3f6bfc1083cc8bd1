"""A provider's verified webhook: check the identity job it names now, instead of at the next poll.

The gateway verified the delivery and published `ProviderWebhookReceived`. Here the identity whose saved
job id names that provider job (`replicate-flux-lora:<trigger>:<training id>`, `astria-tune:<tune id>`)
is looked up; if it is still pending, its status is read with the very call polling makes
(`Provider.identity_status`), and a finished job settles the identity. Idempotent: an identity already
ready or failed is left alone, so a duplicate or late webhook, or the poll that finds the job finished
afterwards, changes nothing. Shot-level webhooks (predictions, prompts, generations) are only logged:
polling finishes shots.
"""

from __future__ import annotations

import logging

from contracts import ProviderWebhookReceived
from infra.runtime import Runtime
from services.provider_adapter import handlers
from services.provider_adapter.adapters.identities import PostgresIdentities
from services.provider_adapter.artifacts import WeightsCopier
from services.provider_adapter.ports import PermanentProviderError, Provider, ProviderError

log = logging.getLogger(__name__)


class WebhookWork:
    def __init__(self, runtime: Runtime, providers: dict[str, Provider], weights: WeightsCopier) -> None:
        self.runtime = runtime
        self.providers = providers
        self.weights = weights

    async def act_on(self, webhook: ProviderWebhookReceived) -> None:
        context = f"provider={webhook.provider} delivery={webhook.delivery_id} job={webhook.job_id}"
        provider = self.providers.get(webhook.provider)
        if webhook.job_id is None or provider is None:
            log.info("webhook ignored (%s): no job id, or the provider is not configured here", context)
            return
        async with self.runtime.pool.acquire() as conn:
            identities = PostgresIdentities(conn)
            found = await identities.find_by_provider_job(webhook.provider, webhook.job_id)
            record = None if found is None else await identities.lock(*found)
        if record is None or record.job_id is None:
            log.info(
                "webhook logged only (%s, %s): no identity job of ours; shots finish by polling",
                context,
                webhook.status,
            )
            return
        if record.status != "pending":
            log.info("webhook changes nothing (%s): the identity is already %s", context, record.status)
            return
        try:
            status = await provider.identity_status(record.job_id)  # the call polling makes
        except PermanentProviderError as refused:
            log.warning("webhook (%s): the provider refused the status check: %s; polling decides", context, refused)
            return
        if status.state == "pending":
            log.info("webhook (%s): the identity is still building (%.0f %%)", context, status.percent)
            return
        weights = None
        if status.state == "ready" and status.weights is not None:
            try:
                weights = await self.weights.copy(record.tenant_id, status.weights)
            except ProviderError as error:  # polling settles it, copying again (or without a copy, if refused)
                log.warning("webhook (%s): could not copy the trained weights (%s); polling settles it", context, error)
                return
        consumer = self.runtime.delivery.consumer("provider-webhook")
        async with self.runtime.delivery.unit_of_work(webhook, consumer) as work:
            if work.already_done:
                return
            events = await handlers.identity_settled_by_webhook(
                webhook,
                status,
                character_id=record.character_id,
                tenant_id=record.tenant_id,
                identities=PostgresIdentities(work.conn),
                simulated=provider.simulated,
                weights=weights,
            )
            work.emit(*events)
        log.info(
            "webhook (%s) settled identity %s: %s",
            context,
            record.character_id,
            status.state if events else "already settled",
        )
