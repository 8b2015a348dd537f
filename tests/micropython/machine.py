# A stand-in for MicroPython's `machine` module, which the WebAssembly port lacks (tests only).
# UART reaches a real serial line: the master side of a pseudo-terminal the test opened and handed to
# node (tests/micropython/run.mjs gives js.uart_write / js.uart_read). Pin prints what it is set to, so
# the test sees the board obey; ADC returns the readings the test put in ADC.VALUES.
import js


class UART:
    def __init__(self, id, baudrate=115200, **kwargs):
        self.id = id
        self.baudrate = baudrate

    def write(self, data):
        js.uart_write(bytes(data).hex())
        return len(data)

    def read(self, nbytes=4096):
        text = js.uart_read(nbytes)
        return bytes.fromhex(text) if text else None


class Pin:
    IN = 0
    OUT = 1

    def __init__(self, id, mode=-1, value=None):
        self.id = id
        self._value = 0 if value is None else value

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0
        print("PIN %s = %d" % (self.id, self._value))


class ADC:
    VALUES = [32768]

    def __init__(self, pin):
        self.pin = pin
        self.reads = 0

    def read_u16(self):
        value = ADC.VALUES[min(self.reads, len(ADC.VALUES) - 1)]
        self.reads += 1
        return value
