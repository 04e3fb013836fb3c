"""How long making an `httpx.Client` takes when 1, 8 or 32 threads make one at once (each loads the TLS
trust store under the GIL): why the serve bench makes its clients before the clock starts.

    python3 bench/httpx_client_setup.py > bench/results/httpx_client_setup_h200.txt
"""

import threading, time, httpx
httpx.Client()
for n in (1, 8, 32):
    done = []
    def f():
        t = time.perf_counter(); httpx.Client(); done.append(time.perf_counter() - t)
    ts = [threading.Thread(target=f) for _ in range(n)]
    t = time.perf_counter()
    [x.start() for x in ts]; [x.join() for x in ts]
    d = sorted(done)
    print(f"httpx.Client() made by {n} threads at once: all made after {time.perf_counter() - t:.3f} s, "
          f"per client p50 {d[len(d) // 2]:.3f} s min {d[0]:.3f} s max {d[-1]:.3f} s")
