// Command gitops-checks evaluates kmsecrets objects the way GitOps tools
// do, for the test suite (tests/gitops.rs):
//
//	gitops-checks argocd-health SCRIPT.lua < object.json   # {"status": ..., "message": ...}
//	gitops-checks argocd-action SCRIPT.lua < object.json   # the object the action returns
//	gitops-checks kstatus < object.json                    # {"status": ..., "message": ...}
//
// Argo CD runs resource health checks and actions in gopher-lua with only
// the package, base and table libraries and a "safe" os library (date,
// time, clock), the object as the global `obj`; this helper sets up the VM
// the same way. kstatus is sigs.k8s.io/cli-utils/pkg/kstatus/status, what
// Flux's health checks and `kpt live status` compute.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "gitops-checks: "+format+"\n", args...)
	os.Exit(1)
}

func readRaw() []byte {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("read stdin: %v", err)
	}
	return raw
}

func readObject() map[string]any {
	raw := readRaw()
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		fail("stdin is not a JSON object: %v", err)
	}
	return obj
}

// newVM opens what Argo CD's util/lua opens: package, base, table, and os
// without the functions that touch the process or the filesystem.
func newVM() *lua.LState {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, lua.OpenOs},
	} {
		l.Push(l.NewFunction(lib.fn))
		l.Push(lua.LString(lib.name))
		l.Call(1, 0)
	}
	osTable := l.GetGlobal("os").(*lua.LTable)
	safe := l.NewTable()
	for _, name := range []string{"time", "date", "clock"} {
		safe.RawSetString(name, osTable.RawGetString(name))
	}
	l.SetGlobal("os", safe)
	return l
}

// toLua converts decoded JSON as Argo CD does: objects and arrays become
// tables (arrays 1-based), numbers LNumber.
func toLua(l *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case string:
		return lua.LString(x)
	case []any:
		t := l.NewTable()
		for _, e := range x {
			t.Append(toLua(l, e))
		}
		return t
	case map[string]any:
		t := l.NewTable()
		for k, e := range x {
			t.RawSetString(k, toLua(l, e))
		}
		return t
	}
	fail("unsupported JSON value %T", v)
	return lua.LNil
}

// fromLua converts back; a table with only 1..n keys is an array.
func fromLua(v lua.LValue) any {
	switch x := v.(type) {
	case *lua.LNilType:
		return nil
	case lua.LBool:
		return bool(x)
	case lua.LNumber:
		return float64(x)
	case lua.LString:
		return string(x)
	case *lua.LTable:
		n := x.MaxN()
		if n > 0 {
			arr := make([]any, 0, n)
			for i := 1; i <= n; i++ {
				arr = append(arr, fromLua(x.RawGetInt(i)))
			}
			return arr
		}
		m := map[string]any{}
		x.ForEach(func(k, val lua.LValue) { m[k.String()] = fromLua(val) })
		return m
	}
	fail("unsupported Lua value %s", v.Type())
	return nil
}

func runScript(path string, obj map[string]any) lua.LValue {
	src, err := os.ReadFile(path)
	if err != nil {
		fail("read %s: %v", path, err)
	}
	l := newVM()
	defer l.Close()
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(string(src)); err != nil {
		fail("lua: %v", err)
	}
	return l.Get(-1)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: gitops-checks argocd-health|argocd-action SCRIPT | kstatus")
	}
	out := json.NewEncoder(os.Stdout)
	switch os.Args[1] {
	case "argocd-health", "argocd-action":
		if len(os.Args) != 3 {
			fail("%s needs the Lua script", os.Args[1])
		}
		ret := runScript(os.Args[2], readObject())
		t, ok := ret.(*lua.LTable)
		if !ok {
			fail("the script returned %s, not a table", ret.Type())
		}
		if err := out.Encode(fromLua(t)); err != nil {
			fail("encode: %v", err)
		}
	case "kstatus":
		// integers as int64, as the API machinery decodes them
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(readRaw()); err != nil {
			fail("stdin is not a Kubernetes object: %v", err)
		}
		res, err := status.Compute(u)
		if err != nil {
			fail("kstatus: %v", err)
		}
		if err := out.Encode(map[string]string{"status": res.Status.String(), "message": res.Message}); err != nil {
			fail("encode: %v", err)
		}
	default:
		fail("unknown check %q", os.Args[1])
	}
}
