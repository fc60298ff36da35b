"""What is an alert: rule files, their validation, evaluation of closed windows, alert states."""
