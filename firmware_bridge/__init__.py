"""firmware_bridge: the UART/GPIO bridge between serial sensors, Pi GPIO pins and MQTT topics.

This package will hold the serial frame codec (sans-IO, MicroPython-compatible) and the
bridge that turns device frames into publishes and topics into frames sent back to devices.
It is independent of edgebroker and must run standalone against any MQTT broker.

Nothing is implemented yet.
"""
