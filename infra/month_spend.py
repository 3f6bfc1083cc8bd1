"""How a tenant's spend this month is counted: one query, for storage's cost alerts and the gateway's budget
refusals alike, so the two can never disagree.

This calendar month (UTC) as [start, end), computed on UTC timestamps so the session's time zone cannot move
the month's end: every take of a shot counts in the month of its `stored_at`, an identity in the month of its
`identity_ready_at`, simulated costs included (and summed apart). One parameter: the tenant id.
Columns: month (YYYY-MM), end_at (when the month ends), spend_usd, simulated_usd.
"""

MONTH_SPEND_SQL = """
    WITH month AS (
        SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AS start_utc,
               date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month' AS end_utc
    ), bounds AS (
        SELECT to_char(start_utc, 'YYYY-MM') AS month,
               start_utc AT TIME ZONE 'UTC' AS start_at, end_utc AT TIME ZONE 'UTC' AS end_at FROM month
    ), costs AS (
        SELECT s.cost_usd AS usd, s.simulation IS NOT NULL AS simulated
          FROM records.shot_takes s, bounds b
         WHERE s.tenant_id = $1 AND s.cost_usd IS NOT NULL AND s.stored_at >= b.start_at AND s.stored_at < b.end_at
        UNION ALL
        SELECT c.identity_cost_usd, coalesce(c.identity_simulated, false)
          FROM records.characters c, bounds b
         WHERE c.tenant_id = $1 AND c.identity_cost_usd IS NOT NULL
           AND c.identity_ready_at >= b.start_at AND c.identity_ready_at < b.end_at
    )
    SELECT b.month, b.end_at,
           (SELECT coalesce(sum(usd), 0) FROM costs) AS spend_usd,
           (SELECT coalesce(sum(usd) FILTER (WHERE simulated), 0) FROM costs) AS simulated_usd
      FROM bounds b"""
