"""edgebroker beside Mosquitto: load generator, scenarios and report. Run `python -m bench --help`."""
