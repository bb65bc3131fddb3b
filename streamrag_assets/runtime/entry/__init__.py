"""What runs inside each service process — signals, its metrics endpoint, heartbeat and reporting — so that `cli.py`
only parses arguments. The supervisor's side of each service (how it is started and probed) is `runtime/<service>.py`.
The CLI imports these at call time: `streamrag status` must not load Spark."""
