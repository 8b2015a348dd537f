# MicroPython runs main.py at boot. The node's code is in node.py, the frame codec in frames.py.
import node

node.main()
