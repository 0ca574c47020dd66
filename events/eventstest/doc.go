// Package eventstest holds what tests of event stores and their users
// share: the conformance suite every events.Store implementation runs
// (RunConformance), an embedded JetStream server on a temporary directory
// (StartServer), and the stored stream as text for scans (StreamText).
//
// It imports events, nats-server and nats.go, and nothing else of ferry's.
package eventstest
