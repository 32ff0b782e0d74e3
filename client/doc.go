// Package client is the Go client for Rotavault's TokenVaultService: what a
// consumer needs to get access tokens, to present them, and to learn that it
// must stop using them. Consumers never see a refresh token: Rotavault owns
// it and rotates it.
//
// # Client
//
// New wraps a gRPC connection (the caller's, with its TLS or bearer
// credentials); Close stops the Client's background work.
//
//	c, err := client.New(conn)
//	...
//	defer c.Close()
//	tok, err := c.Token(ctx, "salesforce-prod")
//
// Token caches each credential's token until its refresh margin
// (WithRefreshMargin, one minute by default, at most a quarter of the
// token's lifetime) or the server's use_until (Token.UseUntil), whichever
// comes first, and then asks the server again; concurrent callers missing
// the cache share one call. Past use_until another replica may rotate the
// credential at a provider that kills the previous access token (ory
// fosite does), so the Client never hands out a cached token after it. A revocation
// watch (WatchRevocations, started by New unless WithoutRevocationWatch)
// drops a credential's cached tokens when the server reports its family
// revoked (FAMILY_REVOKED) or replaced (FAMILY_ACTIVATED); it reconnects
// with its cursor after a broken stream, so no notice is missed, and when
// the server's notice log no longer reaches back that far it drops every
// cached token. Answers are cached only while the watch has a position in
// the log, so a token is never cached across a notice the Client could
// miss. WithNoticeHandler passes the notices on; Watch runs the same
// resuming watch on its own, without a cache, for programs that only follow
// notices (`rotavault watch` is one). The server states expiry
// as an absolute time, which the Client judges by its own clock: keep the
// two clocks within a fraction of the margin of each other (NTP).
//
// # Errors and retries
//
// UNAVAILABLE, RESOURCE_EXHAUSTED and ABORTED answers are retried with
// jittered exponential backoff (WithMaxAttempts, WithBackoff), waiting at
// least what the server's google.rpc.RetryInfo asks, and never past the
// caller's deadline: a wait that would outlast it returns the server's error
// at once. A credential whose family is revoked or was never installed is a
// *ReauthenticationRequiredError (errors.Is ErrReauthenticationRequired):
// only an operator's Reauthenticate helps. Other errors wrap the gRPC status
// (status.Code works on them). Token values never appear in errors, and a
// Token prints and logs without its value.
//
// # HTTP
//
// Transport is an http.RoundTripper presenting a credential's token; on a
// 401 from the resource server it reports the token as rejected and, given a
// different token and a replayable body, retries once. TokenSource adapts
// the Client to golang.org/x/oauth2, so that oauth2.NewClient and the other
// x/oauth2 consumers work unchanged (without the 401 handling).
//
// For Salesforce, requests go to the org's instance URL
// (Token.InstanceURL, or the "instance_url" extra of the oauth2.Token):
// building request URLs from it is the consumer's concern; neither Transport
// nor TokenSource rewrites them.
package client
