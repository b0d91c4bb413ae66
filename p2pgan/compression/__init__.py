"""Compressed gossip (issue 18), beside the codec: the compression operators (:mod:`.compressors`, top-k in
:mod:`.topk` with its payloads in :mod:`.sparse`; :mod:`.operators` makes one from ``mixing.compression``),
a delta applied while it arrives (:mod:`.arriving`), the public copies both ends of a link keep
(:mod:`.copies`) and the CHOCO-SGD consensus step with an in-process mixer for the simulator (:mod:`.choco`).
Pure torch, no wire: :mod:`p2pgan.wire.compressed` puts it on gRPC. This package's root stays light (config
validation imports :mod:`.spec` only).
"""
