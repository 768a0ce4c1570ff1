// Command hello is the image tests' binary: small, so building it for two
// platforms costs the tests little.
package main

import "fmt"

func main() { fmt.Println("hello") }
