package client_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/banger-dev/banger/client"
)

// The examples run against the test daemon, whose socket TestMain puts in
// BANGER_SOCKET; a program would use its daemon's path (or none, for
// client.DefaultSocket).

// Create a VM, look at it, list VMs and delete it.
func Example() {
	ctx := context.Background()
	c := &client.Client{Socket: os.Getenv("BANGER_SOCKET")}

	vm, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "example", MemoryMiB: 128})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created", vm.Name, "with", vm.Spec.MemoryMiB, "MiB")

	vm, err = c.GetVM(ctx, "example")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("state:", vm.Runtime.State)

	vms, err := c.ListVMs(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, vm := range vms {
		fmt.Println("listed", vm.Name)
	}

	if err := c.DeleteVM(ctx, "example", false); err != nil {
		log.Fatal(err)
	}
	_, err = c.GetVM(ctx, "example")
	fmt.Println("deleted:", client.IsNotFound(err))
	// Output:
	// created example with 128 MiB
	// state: created
	// listed example
	// deleted: true
}

func ExampleClient_Version() {
	c := &client.Client{Socket: os.Getenv("BANGER_SOCKET")}
	v, err := c.Version(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("same version as this client:", v.Version == client.ClientVersion())
	fmt.Println("ready:", v.Ready)
	// Output:
	// same version as this client: true
	// ready: true
}

// Start a VM, wait for its SSH and run a command in it.
func ExampleClient_Exec() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := &client.Client{Socket: os.Getenv("BANGER_SOCKET")}

	if _, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "exec-example", MemoryMiB: 128, DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20}); err != nil {
		log.Fatal(err)
	}
	defer c.DeleteVM(ctx, "exec-example", true)
	if _, err := c.StartVM(ctx, "exec-example"); err != nil {
		log.Fatal(err)
	}
	if err := c.WaitSSH(ctx, "exec-example", client.WaitSSHRequest{TimeoutSeconds: 30}); err != nil {
		log.Fatal(err)
	}

	cmd, err := c.Exec(ctx, "exec-example", client.ExecRequest{Argv: []string{"sh", "-c", "echo hello from the guest; exit 3"}})
	if err != nil {
		log.Fatal(err)
	}
	defer cmd.Close()
	code, err := cmd.Wait(os.Stdout, os.Stderr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit code", code)
	// Output:
	// hello from the guest
	// exit code 3
}

// Errors the daemon answers with are classified by the Is* functions.
func ExampleIsAlreadyExists() {
	ctx := context.Background()
	c := &client.Client{Socket: os.Getenv("BANGER_SOCKET")}
	if _, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "twice"}); err != nil {
		log.Fatal(err)
	}
	defer c.DeleteVM(ctx, "twice", true)
	_, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "twice"})
	fmt.Println(client.IsAlreadyExists(err), err)

	_, err = c.GetVM(ctx, "nosuch")
	fmt.Println(client.IsNotFound(err), err)
	// Output:
	// true vm "twice" already exists
	// true vm "nosuch": not found
}
