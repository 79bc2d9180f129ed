package localapi

import (
	"net/http"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/engine"
)

func poolView(p engine.PoolInfo) api.Pool {
	return api.Pool{Name: p.Name, Snapshot: p.Snapshot, Size: p.Size, Ready: p.Ready, Warming: p.Warming,
		Members: p.Members, LastError: p.LastError, CreatedAt: p.CreatedAt.Format(time.RFC3339)}
}

func (s *Server) poolList(w http.ResponseWriter, r *http.Request) error {
	pools, err := s.eng.ListPools(r.Context())
	if err != nil {
		return err
	}
	out := []api.Pool{}
	for _, p := range pools {
		out = append(out, poolView(p))
	}
	return writeJSON(w, out)
}

func (s *Server) poolCreate(w http.ResponseWriter, r *http.Request) error {
	var req api.CreatePoolRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	p, err := s.eng.CreatePool(r.Context(), engine.PoolSpec{Name: req.Name, Snapshot: req.Snapshot, Size: req.Size})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	return writeJSON(w, poolView(p))
}

func (s *Server) poolShow(w http.ResponseWriter, r *http.Request) error {
	p, err := s.eng.GetPool(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, poolView(p))
}

func (s *Server) poolDelete(w http.ResponseWriter, r *http.Request) error {
	if err := s.eng.DeletePool(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	return writeJSON(w, struct{}{})
}

func (s *Server) poolClaim(w http.ResponseWriter, r *http.Request) error {
	var req api.ClaimRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	vm, err := s.eng.ClaimFromPool(r.Context(), engine.ClaimSpec{Pool: r.PathValue("name"), Name: req.Name})
	if err != nil {
		return err
	}
	return writeJSON(w, s.view(r.Context(), vm, false))
}
