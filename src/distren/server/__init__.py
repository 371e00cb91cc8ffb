"""The distren server: core (state, intake, bundles), local runner, HTTP app."""
