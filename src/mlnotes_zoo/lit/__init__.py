"""LightningModules: optimisation, logging and metrics around the plain networks."""
