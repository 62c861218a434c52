"""Training: state, optimizer and schedules, pure step functions, and the loop."""
