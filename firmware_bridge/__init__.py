"""firmware_bridge: UART and GPIO sensors as publishers, and the code that runs on the sensor boards.

- `firmware_bridge.firmware`: the serial codecs (`frames`: COBS + CRC-16 binary frames; `lines`: text
  line formats), written once in the Python subset MicroPython runs; the same files go on the boards.
- The broker-side glue that hosts serial ports and GPIO in edgebroker's loop lives beside them and
  imports nothing from edgebroker: it works against the small interface the loop gives it.

Protocol: docs/serial-protocol.md. Board code: docs/firmware.md.
"""
