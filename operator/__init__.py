"""EdgeFleet's cloud side: the kopf operator, its planner and (later) the fleet gateway."""
