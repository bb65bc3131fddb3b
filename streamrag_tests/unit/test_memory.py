"""Freed memory handed back to the kernel (`runtime/memory.py`): the long-running Python services and the continuous
query's driver JVM do not keep what a burst of work freed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from streamrag_assets.settings import Settings
from streamrag_assets.streaming.spark import native_heap_trim_option, spark_conf

# A burst of small allocations, then all but every 50th freed: glibc cannot give back the top of its heap (a
# survivor sits above the freed pages), so only a trim returns them. The process prints its resident MiB after the
# burst and again after waiting.
_BURST = textwrap.dedent(
    """
    import sys, time
    from streamrag_assets.runtime import memory

    interval = float(sys.argv[1])
    memory.release_periodically(interval)
    held = [bytearray(3000) for _ in range(60_000)]  # ~180 MiB in small blocks
    kept = held[::50]
    del held
    print(round(memory._resident_mib()), flush=True)
    time.sleep(max(1.5, 3 * interval))
    print(round(memory._resident_mib()), flush=True)
    """
)


def _burst(interval_s: float) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _BURST, str(interval_s)], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    return int(out[0]), int(out[1])


def test_a_service_hands_back_what_a_burst_freed_within_its_interval() -> None:
    after_burst, later = _burst(0.5)
    assert after_burst - later >= 100, f"resident {after_burst} MiB after the burst, {later} MiB later"


def test_with_trimming_off_the_freed_memory_stays() -> None:
    after_burst, later = _burst(0)
    assert after_burst - later < 20, f"resident {after_burst} MiB after the burst, {later} MiB later"


def test_the_continuous_querys_jvm_trims_its_native_heap_and_bounded_runs_keep_their_options() -> None:
    settings = Settings(memory_trim_interval_s=30)
    continuous = spark_conf(settings, continuous=True)["spark.driver.extraJavaOptions"].split()
    assert "-XX:TrimNativeHeapInterval=30000" in continuous, continuous
    # A user's own setting comes later on the command line, and the JVM takes the last.
    assert continuous.index("-XX:TrimNativeHeapInterval=30000") < continuous.index("-XX:TieredStopAtLevel=1")
    bounded = spark_conf(settings)["spark.driver.extraJavaOptions"]
    assert "TrimNativeHeapInterval" not in bounded
    off = spark_conf(Settings(memory_trim_interval_s=0), continuous=True)["spark.driver.extraJavaOptions"]
    assert "TrimNativeHeapInterval" not in off


def test_an_option_the_jvm_does_not_know_is_left_out_rather_than_stopping_it() -> None:
    from streamrag_assets.streaming import spark

    assert spark._jvm_accepts("-XX:TrimNativeHeapInterval=1000")  # Java 17.0.15 here
    assert not spark._jvm_accepts("-XX:NoSuchOptionForStreamrag=1")
    assert native_heap_trim_option(0) is None


def test_one_trimming_thread_per_process_however_often_a_service_starts() -> None:
    from streamrag_assets.runtime import memory

    first = memory.release_periodically(3600)
    assert first is not None and first.is_alive()
    assert memory.release_periodically(3600) is first  # an app started again in the same process (the API's tests)
    assert memory.release_periodically(0) is None
