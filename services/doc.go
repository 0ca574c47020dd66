// Package services assembles ferry's processes: configuration, zerolog setup,
// the NATS connection (embedded server or remote), the all-in-one dev stack
// with its demo origin, and the CLI's client and rendering. Only cmd/ferry
// imports it.
package services
