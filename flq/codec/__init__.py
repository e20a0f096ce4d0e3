"""The update codec: how adapters and updates are quantized, framed and bounded when decoded.

``array_codec`` encodes one tensor (fp32/fp16/int8/int4, LZ4, bounded decoding),
``update_codec`` a whole adapter (error feedback, bytes per element), ``flower_records`` the
same as Flower ArrayRecords. Pure data in, bytes out: no I/O, and nothing here knows QUIC.
"""
