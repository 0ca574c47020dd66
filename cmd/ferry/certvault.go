package main

import (
	"os"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
)

func certvaultCmd(g *globals) *cobra.Command {
	var vaultAddr string
	cmd := &cobra.Command{
		Use:   "certvault",
		Short: "Run certvault, and administer it (key-encryption key rotation)",
	}
	var opts certvault.RotateKeyOptions
	rotate := &cobra.Command{
		Use:   "rotate-key [--finish] [--retire]",
		Short: "Rotate the key-encryption key of the private keys at rest and rewrap every record (admins)",
		Long: `Rotates certvault's key-encryption key (KEK) and rewraps the data key of every
stored private key with it; the private keys' ciphertexts are not touched.

With a keyring file (the dev stack's <data-dir>/vault.kek), the new key is:
  - a version above the active one that you added to the keyring file, if any;
  - else, if records are still on older versions (an interrupted rotation),
    none: the rotation is finished, so running it again is always safe;
  - else a new random key, written to the keyring file (atomically, mode
    0600) before it is used.
--finish never makes a new key; --retire then drops from the keyring file
the versions no record uses any more. With several certvault processes, add
the new version to every keyring file and restart them all first; then
rotate-key --retire only rewraps and retires (docs/certvault.md).

With the keyring in FERRY_VAULT_KEK certvault cannot write a key: add
"2:<base64>" to the variable, restart, and run rotate-key (it rewraps).

The answer holds versions and counts, never keys; the run is audited as a
VaultKeysRewrapped event.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.check(); err != nil {
				return err
			}
			client, err := services.Discover(services.ClientConfig{Service: "certvault", Addr: vaultAddr, DataDir: g.dir(), CACert: g.caCert, Cert: g.cert, Key: g.key})
			if err != nil {
				return err
			}
			c := &services.CLI{Out: os.Stdout, Err: os.Stderr, JSON: g.json(), Client: client}
			res, err := c.Client.RotateKey(cmd.Context(), opts)
			if err != nil {
				return err
			}
			c.PrintRotateKey(res)
			return nil
		},
	}
	rotate.Flags().BoolVar(&opts.Finish, "finish", false, "make no new key: only rewrap records not yet on the active version")
	rotate.Flags().BoolVar(&opts.Retire, "retire", false, "then drop from the keyring file the versions no record uses any more")
	cmd.PersistentFlags().StringVar(&vaultAddr, "vault-addr", "", "certvault URL (default: $FERRY_VAULT_ADDR, else the running `ferry dev`)")
	cmd.AddCommand(certvaultRunCmd(), rotate)
	return cmd
}
