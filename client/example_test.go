package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"

	"github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// exampleServer starts an in-process Rotavault server with the Salesforce
// simulator and a credential "acme", and returns a connection to it: what
//
//	conn, err := grpc.NewClient("rotavault.internal:7443", grpc.WithTransportCredentials(creds))
//
// gives in production.
func exampleServer() (*grpc.ClientConn, func()) {
	e, err := startEnv()
	if err != nil {
		log.Fatal(err)
	}
	if err := e.install(context.Background(), "acme"); err != nil {
		e.Close()
		log.Fatal(err)
	}
	return e.ctrl, e.Close
}

func ExampleClient_Token() {
	conn, stop := exampleServer()
	defer stop()

	c, err := client.New(conn)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	tok, err := c.Token(context.Background(), "acme")
	if err != nil {
		log.Fatal(err)
	}
	// Salesforce's REST API lives at the instance URL.
	req, err := http.NewRequest(http.MethodGet, tok.InstanceURL+"/services/data/v62.0/", nil)
	if err != nil {
		log.Fatal(err)
	}
	req.Header.Set("Authorization", tok.AuthorizationHeader())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	fmt.Println(tok.TokenType, "token of generation", tok.Generation, "→", resp.Status)
	// Output: Bearer token of generation 1 → 200 OK
}

// Code written for golang.org/x/oauth2 takes the Client's TokenSource.
func ExampleClient_TokenSource() {
	conn, stop := exampleServer()
	defer stop()
	c, err := client.New(conn)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx := context.Background()
	src := c.TokenSource(ctx, "acme")
	tok, err := src.Token()
	if err != nil {
		log.Fatal(err)
	}
	instanceURL := tok.Extra("instance_url").(string) // as Salesforce's token endpoint says
	resp, err := oauth2.NewClient(ctx, src).Get(instanceURL + "/services/data/v62.0/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status)
	// Output: 200 OK
}

// Transport presents the token and, when the resource server answers 401,
// gets a newer one and retries once.
func ExampleTransport() {
	conn, stop := exampleServer()
	defer stop()
	c, err := client.New(conn)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx := context.Background()
	tok, err := c.Token(ctx, "acme")
	if err != nil {
		log.Fatal(err)
	}
	hc := &http.Client{Transport: &client.Transport{Client: c, CredentialID: "acme"}}
	resp, err := hc.Get(tok.InstanceURL + "/services/data/v62.0/sobjects/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status)
	// Output: 200 OK
}

// A revoked family is a typed error: nothing helps until an operator
// reauthenticates the credential.
func ExampleReauthenticationRequiredError() {
	conn, stop := exampleServer()
	defer stop()
	c, err := client.New(conn)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx := context.Background()
	// An operator revokes the credential's family, for example after a leak.
	if _, err := rotavaultv1.NewTokenVaultServiceClient(conn).RevokeCredential(ctx,
		&rotavaultv1.RevokeCredentialRequest{CredentialId: "acme", Reason: "INC-42"}); err != nil {
		log.Fatal(err)
	}

	_, err = c.Token(ctx, "acme")
	var reauth *client.ReauthenticationRequiredError
	if errors.As(err, &reauth) {
		fmt.Println("ask an operator to reauthenticate", reauth.CredentialID)
	}
	fmt.Println(errors.Is(err, client.ErrReauthenticationRequired))
	// Output:
	// ask an operator to reauthenticate acme
	// true
}
