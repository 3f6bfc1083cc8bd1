"""Provider adapters. Each implements `services.provider_adapter.ports.Provider`."""

from services.provider_adapter.providers.sim import SIM_PRICES, SIM_PRICES_AS_OF, SimPrice, SimProvider, SimSettings

__all__ = ["SIM_PRICES", "SIM_PRICES_AS_OF", "SimPrice", "SimProvider", "SimSettings"]
