// Package job owns the BITS job model, pure: the nine states, priorities,
// files and their progress, times, error information, the commands a job
// accepts, Decide (command, state) → events and Evolve (state, event) →
// state, the limits, and ferry's error vocabulary (codes.go).
//
// Decide and Evolve do no I/O and read no clock: time comes in the command's
// metadata. The package imports only events (and the standard library).
package job
