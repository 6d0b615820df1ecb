package main

import "context"

// startSMTP starts the SMTP listeners (not yet wired).
func startSMTP(ctx context.Context, env *mailEnv) (func(context.Context), error) {
	return func(context.Context) {}, nil
}
