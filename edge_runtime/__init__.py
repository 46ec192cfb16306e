"""EdgeFleet's edge side: the runtime that serves models on a device."""
