# Switchboard: the two commands that matter are `make dev` and `make test`.
CARGO ?= cargo

.PHONY: dev test faults lint fmt bench build release image k8s-check migrate clean

## Run the whole cluster in one process on SQLite (no other program needed).
dev:
	$(CARGO) run -p switchboard -- dev

## The whole test suite (needs Postgres on 127.0.0.1:5432 and NATS on 127.0.0.1:4222).
## The end-to-end tests (tests/tests/e2e) start the switchboard binary, built first.
test:
	$(CARGO) build -p switchboard
	$(CARGO) test --workspace --no-fail-fast

## The fault-injection suite alone, with Postgres held down for a full minute: kill -9 and
## SIGSTOP of a leader under load, NATS stopped and restarted, Postgres silent and down.
## (`make test` runs the same tests, with an 8-second hold.)
faults:
	$(CARGO) build -p switchboard
	SWITCHBOARD_FAULT_HOLD_SECS=60 $(CARGO) test -p switchboard-tests --test e2e faults:: -- --test-threads=2

## Formatting and clippy with warnings as errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks: ratios against raw baselines, printed and written to BENCHMARKS.md.
bench:
	$(CARGO) build --release -p switchboard
	$(CARGO) run --release -p switchboard-tests --bin bench -- --write BENCHMARKS.md

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p switchboard

## Apply database migrations to $SWITCHBOARD_DATABASE_URL.
migrate:
	$(CARGO) run -p switchboard -- migrate

## Container image (needs a Docker engine).
image:
	docker build -f deploy/Dockerfile -t switchboard:dev .

## Validate the Kubernetes manifests and the Dockerfile without a cluster.
k8s-check:
	scripts/k8s-check

clean:
	$(CARGO) clean
