"""Many functions at once: fan-out, quotas as Prefect limits, the plan and the report."""
