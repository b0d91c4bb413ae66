"""How p2pgan starts its child processes (peer daemons, selftest and experiment workers, benchmark ranks).

Its own module, free of heavy imports, because both the daemon's process manager and the wire's worker
launcher use it, and ``p2pgan COMMAND --help`` must stay fast (no torch).
"""

from __future__ import annotations

from typing import Any

#: keyword arguments for every ``subprocess.Popen`` that starts a p2pgan process from one that may run
#: gRPC (the harness, selftest, benchmarks, the test suite). gRPC's fork handler restarts its poller
#: thread in the child; closing the child's descriptors before exec (Popen's default) can close that
#: poller's epoll fd under it, and the child then aborts with SIGABRT before it ever runs (grpc/grpc#43055;
#: seen once in CI as a harness peer "killed by SIGABRT" whose log held only gRPC's epoll_wait error).
#: Python's and gRPC's own descriptors are close-on-exec, so keeping them open until exec leaks nothing.
#: (Turning gRPC's fork support off instead was worse: its handlers quiesce gRPC's threads at fork, and
#: without them a probe that forked 20 children with a ``preexec_fn`` while gRPC was busy hung.)
SPAWN_OPTIONS: dict[str, Any] = {"close_fds": False}
