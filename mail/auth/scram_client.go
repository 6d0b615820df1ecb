package auth

import "github.com/xdg-go/scram"

// ScramClient is the client side of SCRAM-SHA-256 as a go-sasl Client: for
// tests of the servers here, and for any peer that offers only SCRAM.
type ScramClient struct {
	User, Password string
	conv           *scram.ClientConversation
}

// Start begins the exchange with the client-first message.
func (c *ScramClient) Start() (string, []byte, error) {
	cl, err := scram.SHA256.NewClient(c.User, c.Password, "")
	if err != nil {
		return "", nil, err
	}
	c.conv = cl.NewConversation()
	first, err := c.conv.Step("")
	return ScramSHA256, []byte(first), err
}

// Next answers a server challenge.
func (c *ScramClient) Next(challenge []byte) ([]byte, error) {
	resp, err := c.conv.Step(string(challenge))
	return []byte(resp), err
}

// Verified reports whether the server proved, in its final message, that it
// knows the password's keys.
func (c *ScramClient) Verified() bool { return c.conv != nil && c.conv.Valid() }
