// Package certvault owns client-certificate stores addressed by BITS store
// location and store name, encryption of private keys at rest, import,
// release of keys to the agent holding a job's lease, and the audit of every
// release and denial.
//
// It imports job and events; never agent or coordinator. (Issue #3 builds
// it; this package only states its place in the layout so far.)
package certvault
