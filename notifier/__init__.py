"""Who hears about an alert: routing, throttling, escalation, templates and channels."""
