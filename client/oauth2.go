package client

import (
	"context"
	"time"

	"golang.org/x/oauth2"
)

// oauth2ExpiryDelta is how long before a token's Expiry golang.org/x/oauth2
// stops reusing it (its unexported defaultExpiryDelta).
const oauth2ExpiryDelta = 10 * time.Second

// TokenSource returns an oauth2.TokenSource of credentialID's access tokens,
// for code written for golang.org/x/oauth2: oauth2.NewClient(ctx,
// c.TokenSource(ctx, id)) is an *http.Client presenting them. Each Token
// call is a Client.Token call under ctx with opts; its errors are Token's
// (errors.Is ErrReauthenticationRequired works through the *url.Error an
// http.Client returns).
//
// The *oauth2.Token has AccessToken, TokenType and Expiry; its Extra
// "instance_url" is Salesforce's instance URL, as x/oauth2 code for
// Salesforce expects. There is no refresh token: Rotavault keeps it.
//
// Expiry is the moment the Client stops handing the token out (its expiry
// less the refresh margin, or less WithMinRemaining's lifetime when that is
// longer, or the token's UseUntil when that comes first) plus x/oauth2's
// 10-second expiry delta, never later than the real expiry: the oauth2.ReuseTokenSource that
// oauth2.NewClient puts in front of every source then asks again exactly
// when the Client would. That cache of x/oauth2 does not see revocation
// notices and does not act on a 401; Transport does both.
func (c *Client) TokenSource(ctx context.Context, credentialID string, opts ...TokenOption) oauth2.TokenSource {
	var o tokenOptions
	for _, opt := range opts {
		opt.applyToken(&o)
	}
	return &tokenSource{ctx: ctx, c: c, id: credentialID, opts: opts, minRemaining: o.minRemaining}
}

type tokenSource struct {
	ctx          context.Context
	c            *Client
	id           string
	opts         []TokenOption
	minRemaining time.Duration
}

func (s *tokenSource) Token() (*oauth2.Token, error) {
	tok, err := s.c.Token(s.ctx, s.id, s.opts...)
	if err != nil {
		return nil, err
	}
	expiry := tok.Expiry.Add(oauth2ExpiryDelta - max(s.c.margin(tok), s.minRemaining))
	if until := tok.UsableUntil().Add(oauth2ExpiryDelta); until.Before(expiry) {
		expiry = until
	}
	if expiry.After(tok.Expiry) {
		expiry = tok.Expiry
	}
	ot := &oauth2.Token{AccessToken: tok.AccessToken, TokenType: tok.TokenType, Expiry: expiry}
	if tok.InstanceURL != "" {
		ot = ot.WithExtra(map[string]any{"instance_url": tok.InstanceURL})
	}
	return ot, nil
}
