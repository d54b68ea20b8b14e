"""World-model inference: engines, models, controls and the front/engine protocol.

Importing this package must stay cheap and torch-free: the front process
(ws_server.py) imports `inference.protocol` and `inference.controls`.
"""
