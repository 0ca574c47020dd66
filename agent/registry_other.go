//go:build !linux

package agent

// freeBytes is unknown (-1) where statfs is not wired up.
func freeBytes(string) int64 { return -1 }
