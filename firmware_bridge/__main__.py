"""`python -m firmware_bridge`: one serial port bridged to any MQTT broker (firmware_bridge/standalone.py)."""
import sys

from .standalone import main

sys.exit(main())
