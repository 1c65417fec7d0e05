"""Command-line tools; ``tools/<name>.py`` and the ``dermseg-<name>`` console scripts run them."""
