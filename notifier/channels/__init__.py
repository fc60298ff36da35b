"""Notification channels, one module per channel behind a small base class."""
