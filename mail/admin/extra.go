//go:build !flotilla_next

package admin

import "net/http"

// extraRoutes adds the routes of build-tagged command kinds (see next.go).
func extraRoutes(*Server, func(string, func(*http.Request) (any, error))) {}
