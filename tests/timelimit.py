"""A wall-clock limit for tests of inputs that could hang (opening a FIFO, a YAML bomb): SIGALRM raises in the
main thread instead of letting the test block forever."""

import contextlib
import signal


@contextlib.contextmanager
def time_limit(seconds: int, exc: type[BaseException] = TimeoutError):
    def handler(*_):
        raise exc(f"no answer after {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
