// Package eventstest holds what tests of event stores and their users
// share: the conformance suite every events.Store implementation runs
// (RunConformance) and an embedded JetStream server on a temporary directory
// (StartServer).
//
// It imports events, nats-server and nats.go, and nothing else of ferry's.
package eventstest
