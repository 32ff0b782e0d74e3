package provider_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/rotavault/rotavault/provider"
)

func ExampleClient_AuthCodeURL() {
	c := provider.New(nil)
	ep := provider.SalesforceEndpoint("https://acme.my.salesforce.com")
	cc := provider.ClientCredentials{ClientID: "3MVG9example", ClientSecret: "never-in-the-url"}
	// A real flow uses NewPKCE and keeps the verifier for ExchangeCode.
	challenge := "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
	u, err := c.AuthCodeURL(ep, cc, "https://vault.example/callback", "state-123", challenge, []string{"api", "refresh_token"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(u)
	// Output:
	// https://acme.my.salesforce.com/services/oauth2/authorize?client_id=3MVG9example&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&redirect_uri=https%3A%2F%2Fvault.example%2Fcallback&response_type=code&scope=api+refresh_token&state=state-123
}

func ExampleClient_Refresh() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":"invalid_grant","error_description":"expired access/refresh token"}`)
	}))
	defer srv.Close()

	c := provider.New(nil)
	cc := provider.ClientCredentials{ClientID: "3MVG9example", ClientSecret: "s3cret"}
	_, err := c.Refresh(context.Background(), provider.SalesforceEndpoint(srv.URL), cc, "5Aep861old")

	var pe *provider.Error
	switch {
	case err == nil:
		fmt.Println("persist the new refresh token before anything else")
	case errors.As(err, &pe) && pe.Outcome == provider.OutcomeNotProcessed:
		fmt.Println("safe to retry after", pe.RetryAfter)
	case errors.As(err, &pe) && pe.Outcome == provider.OutcomeUnknown:
		fmt.Println("the refresh token may be spent: do not resend it blindly")
	case errors.Is(err, provider.ErrInvalidGrant):
		fmt.Println("reauthentication required:", err)
	}
	// Output:
	// reauthentication required: provider: refresh: invalid_grant (HTTP 400): expired access/refresh token
}
