"""A Hugging Face Hub stand-in on 127.0.0.1 for upload tests: the four endpoints `HfApi.create_repo` and
`HfApi.upload_folder` call (create, validate-yaml, preupload, commit), answered as the Hub answers them, with every
file asked to be sent inline ("regular" upload mode) so the commit carries the bytes. What it received is recorded
in `FakeHub.repos`: {repo_id: {"private": bool, "files": {path: bytes}, "commits": [summary, ...]}}.

    with FakeHub() as hub:
        env = {**os.environ, **hub.env}   # HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE=0 for a subprocess
"""

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "hf_fake_token_for_tests"


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.errors: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.env = {"HF_ENDPOINT": self.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0"}

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    hub.errors.append(f"{self.path}: no or wrong token")
                    return self.reply(401, {"error": "Invalid credentials in Authorization header"})
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo_id = f"{request['organization']}/{request['name']}"
                    repo = hub.repos.setdefault(repo_id, {"files": {}, "commits": []})
                    repo["private"] = request.get("visibility") == "private"
                    return self.reply(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self.reply(200, {"warnings": []})
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/main", path)
                if not match or match.group(1) not in hub.repos:
                    hub.errors.append(f"unexpected request {self.path}")
                    return self.reply(404, {"error": "Repository not found"})
                repo = hub.repos[match.group(1)]
                if match.group(2) == "preupload":
                    files = json.loads(body)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self.reply(200, {"files": modes})
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "header":
                        repo["commits"].append(item["value"]["summary"])
                    elif item["key"] == "file" and item["value"]["encoding"] == "base64":
                        repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    else:
                        hub.errors.append(f"commit item not handled: {item['key']}")
                oid = f"{len(repo['commits']):040x}"
                return self.reply(
                    200, {"commitUrl": f"{hub.endpoint}/{match.group(1)}/commit/{oid}", "commitOid": oid}
                )

        return Handler
