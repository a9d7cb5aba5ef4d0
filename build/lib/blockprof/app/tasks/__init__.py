"""Tasks: each module has `run(ctx, tracker)`; conf/task/<name>.yaml points at it."""
