# The two commands of the README.
.PHONY: dev test

# The whole system on this machine, in the foreground until Ctrl-C (API on http://127.0.0.1:3000).
# Options for local-stack go in ARGS, e.g. `make dev ARGS="--port 8080"`.
dev:
	scripts/dev.sh $(ARGS)

# Every check CI runs.
test:
	scripts/test.sh
