package localapi

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/inventory"
)

// Ports.

func (s *Server) portList(w http.ResponseWriter, r *http.Request) error {
	ports, err := s.eng.ListPorts(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, ports)
}

func (s *Server) portAdd(w http.ResponseWriter, r *http.Request) error {
	var req api.PortRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	spec, err := s.eng.AddPort(r.Context(), r.PathValue("name"), req.Spec)
	if err != nil {
		return err
	}
	return writeJSON(w, []string{spec})
}

func (s *Server) portRemove(w http.ResponseWriter, r *http.Request) error {
	raw, err := url.PathUnescape(r.PathValue("spec"))
	if err != nil {
		return errdefs.Invalid("bad port spec")
	}
	if err := s.eng.RemovePort(r.Context(), r.PathValue("name"), raw); err != nil {
		return err
	}
	return writeJSON(w, struct{}{})
}

// Sessions.

func (s *Server) sessionStart(w http.ResponseWriter, r *http.Request) error {
	var req api.StartSessionRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	gs, err := s.eng.StartSession(r.Context(), r.PathValue("name"), engine.SessionSpec{
		Name: req.Name, Argv: req.Argv, Cwd: req.Cwd, Env: req.Env, Stdin: req.Stdin, User: req.User,
	})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	return writeJSON(w, gs)
}

func (s *Server) sessionList(w http.ResponseWriter, r *http.Request) error {
	sessions, err := s.eng.ListSessions(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, sessions)
}

func (s *Server) sessionLogs(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	o := engine.LogOptions{Stream: q.Get("stream")}
	if v := q.Get("tail"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return errdefs.Invalid("invalid tail %q: want a number of lines >= 0", v)
		}
		o.Tail = n
	}
	var err error
	if o.Follow, err = api.ParseBoolParam(q, "follow"); err != nil {
		return err
	}
	if err := engine.CheckLogOptions(&o); err != nil {
		return err
	}
	started := func() {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
	}
	return s.eng.SessionLogs(r.Context(), r.PathValue("name"), r.PathValue("session"), o, started, flushWriter{w})
}

func (s *Server) sessionSend(w http.ResponseWriter, r *http.Request) error {
	if err := s.eng.SendSession(r.Context(), r.PathValue("name"), r.PathValue("session"), io.LimitReader(r.Body, api.MaxBodyBytes)); err != nil {
		return err
	}
	return writeJSON(w, struct{}{})
}

func (s *Server) sessionStop(w http.ResponseWriter, r *http.Request) error {
	var req api.StopSessionRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	gs, err := s.eng.StopSession(r.Context(), r.PathValue("name"), r.PathValue("session"), req.Signal, time.Duration(req.GraceSeconds)*time.Second)
	if err != nil {
		return err
	}
	return writeJSON(w, gs)
}

// Images.

func imageView(im engine.ImageInfo) api.Image {
	out := api.Image{Image: im.Image, QEMUBootable: im.Bootability.QEMU, FirecrackerBootable: im.Bootability.Firecracker,
		Notes: im.Bootability.Reasons, UsedBy: im.UsedBy}
	if m := im.OCI; m != nil {
		o := &api.OCIImage{Source: m.Source, Digest: m.Digest, Platform: m.Platform, Size: m.Size, RootfsSize: m.RootfsSize,
			Env: m.Config.Env, WorkingDir: m.Config.WorkingDir, User: m.Config.User, Entrypoint: m.Config.Entrypoint, Cmd: m.Config.Cmd}
		for _, l := range m.Layers {
			o.Layers = append(o.Layers, api.OCILayer{Digest: l.Digest, Size: l.Size})
		}
		out.OCI = o
	}
	return out
}

// imagePull makes an image from a container image, streaming progress
// lines like imageBuild; the last line is "ok NAME" or "error: ...".
func (s *Server) imagePull(w http.ResponseWriter, r *http.Request) error {
	var req api.PullImageRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	spec := engine.OCISpec{Name: req.Name, Ref: req.Ref, Path: req.Path, Insecure: req.Insecure}
	if err := s.eng.CheckOCI(r.Context(), &spec); err != nil {
		return err
	}
	p := startProgress(w)
	im, err := s.eng.PullImage(r.Context(), spec, p.step)
	if err != nil {
		p.say("error: %v", err)
		return nil
	}
	p.say("ok %s (%.1fs)", im.Name, p.elapsed())
	return nil
}

func (s *Server) imageList(w http.ResponseWriter, r *http.Request) error {
	ims, err := s.eng.ListImages(r.Context())
	if err != nil {
		return err
	}
	out := []api.Image{}
	for _, im := range ims {
		out = append(out, imageView(im))
	}
	return writeJSON(w, out)
}

func (s *Server) imageShow(w http.ResponseWriter, r *http.Request) error {
	im, err := s.eng.GetImage(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, imageView(im))
}

// imageImport registers an image from files already on the host.
func (s *Server) imageImport(w http.ResponseWriter, r *http.Request) error {
	var req api.ImportImageRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	im, err := s.eng.ImportImage(r.Context(), engine.ImportSpec{Name: req.Name, Kernel: req.Kernel, Initrd: req.Initrd,
		Rootfs: req.Rootfs, BootArgs: req.BootArgs, VMLinux: req.VMLinux})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	return writeJSON(w, imageView(im))
}

func (s *Server) imageDelete(w http.ResponseWriter, r *http.Request) error {
	if err := s.eng.DeleteImage(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	return writeJSON(w, struct{}{})
}

// imagePrune empties the container image caches.
func (s *Server) imagePrune(w http.ResponseWriter, r *http.Request) error {
	var req api.PruneImagesRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	res, err := s.eng.PruneImages(r.Context(), req.All)
	if err != nil {
		return err
	}
	return writeJSON(w, api.PruneImagesResult{
		RemovedLayers: api.CacheUsage(res.RemovedLayers), RemovedRootfs: api.CacheUsage(res.RemovedRootfs),
		KeptLayers: api.CacheUsage(res.KeptLayers), KeptRootfs: api.CacheUsage(res.KeptRootfs),
	})
}

// imageBuild builds an image from Debian packages, streaming progress
// lines; the last line is "ok NAME" or "error: ...". A failed build leaves
// nothing registered and no files.
func (s *Server) imageBuild(w http.ResponseWriter, r *http.Request) error {
	var req api.BuildImageRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	spec := engine.BuildSpec{Name: req.Name, Base: req.Base, Packages: req.Packages}
	if err := s.eng.CheckBuild(r.Context(), &spec); err != nil {
		return err
	}
	p := startProgress(w)
	b, err := s.eng.BuildImage(r.Context(), spec, p.step)
	if err != nil {
		p.say("error: %v", err)
		return nil
	}
	for _, n := range b.Notes {
		p.say("note: %s", n)
	}
	p.say("ok %s (kernel %s, %.1fs)", b.Image.Name, b.KernelVersion, p.elapsed())
	return nil
}

// Host inventory.

func hostObjects(objs []inventory.Object) []api.HostObject {
	out := make([]api.HostObject, 0, len(objs))
	for _, o := range objs {
		out = append(out, api.HostObject{Kind: o.Kind, Name: o.Name, VM: o.VM, Orphan: o.Orphan, Detail: o.Detail})
	}
	return out
}

func (s *Server) doctor(w http.ResponseWriter, r *http.Request) error {
	rep, err := s.inv.Doctor(r.Context())
	if err != nil {
		return err
	}
	out := api.DoctorReport{RootDiskMethod: rep.RootDiskMethod, DefaultVMM: rep.DefaultVMM, Objects: hostObjects(rep.Objects)}
	for _, c := range rep.Checks {
		out.Checks = append(out.Checks, api.DoctorCheck{Name: c.Name, OK: c.OK, Detail: c.Detail})
	}
	return writeJSON(w, out)
}

// gc removes orphaned host objects (idempotent: a second run finds none).
func (s *Server) gc(w http.ResponseWriter, r *http.Request) error {
	dry, err := api.ParseBoolParam(r.URL.Query(), "dry_run")
	if err != nil {
		return err
	}
	res, err := s.inv.GC(r.Context(), dry)
	if err != nil {
		return err
	}
	out := api.GCResponse{DryRun: res.DryRun, Removed: hostObjects(res.Removed), Errors: res.Errors}
	if len(res.Kept) > 0 {
		out.Kept = hostObjects(res.Kept)
	}
	if layers, rootfs, err := s.eng.ImageCacheUsage(); err == nil && layers.Count+rootfs.Count > 0 {
		out.ImageCaches = &api.ImageCaches{Layers: api.CacheUsage(layers), Rootfs: api.CacheUsage(rootfs)}
	}
	return writeJSON(w, out)
}
