// Renders an ollama TEMPLATE the way ollama does (Go text/template, missingkey=zero, a `json` function) so tests
// can compare it with the Jinja chat template where ollama itself cannot be installed.
//
//	go run tests/engine_scripts/render_gotemplate.go < input.json
//
// input.json: {"template": "...", "data": {"Messages": [...], "Tools": [...], "Think": false, "IsThinkSet": false}}
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

func main() {
	var input struct {
		Template string         `json:"template"`
		Data     map[string]any `json:"data"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&input); err != nil {
		panic(err)
	}
	funcs := template.FuncMap{"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	}}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Funcs(funcs).Parse(input.Template))
	if err := tmpl.Execute(os.Stdout, input.Data); err != nil {
		panic(err)
	}
}
