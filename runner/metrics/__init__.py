"""Metrics: the registry of what an eval or a reward can score (text metrics, SQL execution), pure functions
that every stage above shares."""
