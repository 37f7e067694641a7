package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of ckptfs and of the Go toolchain that built it",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "ckptfs %s\n%s %s/%s\n",
				version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		},
	}
}
