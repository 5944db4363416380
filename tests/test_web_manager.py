"""
The file manager's data-safety behaviour (issue #14, section 1): pages shaped
by permissions, no overwrite by surprise on upload or rename, errors shown
where the person is, and the login/logout notices.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rumpus_secure.vfs import AlreadyExists, JailedFS
from rumpus_secure.web.site import build_https_site
from rumpus_secure.web.upload import numbered_name
from tests.test_web_site import login
from tests.test_web_support import HTTPDriver, make_server, multipart

READ_ONLY = frozenset({"list", "download"})
NO_OVERWRITE = frozenset({"list", "download", "upload", "rename", "mkdir", "delete"})
JSON = {b"accept": b"application/json"}


@pytest.fixture
def server(tmp_path: Path):
    server = make_server(tmp_path)
    server.store.add("alice", "correct horse")
    return server


@pytest.fixture
def site(server):
    return build_https_site(server, server.reactor)


@pytest.fixture
def web(site) -> HTTPDriver:
    return HTTPDriver(site)


def upload(web: HTTPDriver, token: str, name: str, data: bytes, exists: str | None = None,
           json_reply: bool = False):
    fields = [("csrf", None, token.encode())]
    if exists is not None:
        fields.append(("exists", None, exists.encode()))
    fields.append(("file", name, data))
    body, ctype = multipart(fields)
    headers = {b"content-type": ctype}
    if json_reply:
        headers.update(JSON)
    return web.request(b"POST", b"/upload?dir=/", body=body, headers=headers)


# -- permissions shape the page ---------------------------------------------

WRITE_CONTROLS = [b"id=upload-form", b"id=mkdir-form", b"data-act=rename",
                  b"data-act=delete", b"formaction='/delete'"]


def test_read_only_account_sees_no_write_action_while_another_does(server, site):
    viewer = server.store.add("viewer", "pw", READ_ONLY)
    (viewer.home / "f.txt").write_bytes(b"x")
    (server.store.get("alice").home / "f.txt").write_bytes(b"x")
    # Two browsers on the same address, other accounts, pages interleaved.
    alice, bob = HTTPDriver(site), HTTPDriver(site)
    login(alice)
    login(bob, "viewer", "pw")
    for _ in range(2):
        full = alice.get(b"/files/").body
        read_only = bob.get(b"/files/").body
        for control in WRITE_CONTROLS:
            assert control in full, control
            assert control not in read_only, control
        assert b"download>Download</a>" in read_only
        assert b"Download as ZIP" in read_only
        assert b"may look and download here" in read_only


def test_no_replace_choice_without_overwrite(server, web):
    server.store.add("up", "pw", NO_OVERWRITE)
    login(web, "up", "pw")
    page = web.get(b"/files/").body
    assert b"value=keep" in page and b"value=replace" not in page
    assert b"<option value=refuse selected>" in page


def test_no_download_link_without_download(server, web):
    account = server.store.add("drop", "pw", frozenset({"list", "upload"}))
    (account.home / "f.txt").write_bytes(b"x")
    login(web, "drop", "pw")
    page = web.get(b"/files/").body
    assert b"href='/files/f.txt'" not in page and b"id=upload-form" in page


# -- uploads never replace by surprise ---------------------------------------

def test_upload_onto_taken_name_is_refused_by_default(server, web):
    home = server.store.get("alice").home
    (home / "report.txt").write_bytes(b"old")
    token = login(web)
    response = upload(web, token, "report.txt", b"new")
    assert response.status == 303
    assert (home / "report.txt").read_bytes() == b"old"
    listing = web.get(b"/files/").body.decode()
    assert "report.txt already exists here; nothing was replaced" in listing
    assert "Uploaded" not in listing
    response = upload(web, token, "report.txt", b"new", json_reply=True)
    assert response.status == 409
    assert json.loads(response.body)["conflicts"] == ["report.txt"]
    assert (home / "report.txt").read_bytes() == b"old"
    assert not server.audit.named("web.upload")
    assert sorted(p.name for p in home.iterdir()) == ["report.txt"]


@pytest.mark.parametrize("choice, stored, files", [
    ("keep", "report (1).txt", {"report.txt": b"old", "report (1).txt": b"new"}),
    ("replace", "report.txt", {"report.txt": b"new"}),
    ("skip", None, {"report.txt": b"old"}),
])
def test_upload_collision_choices(server, web, choice, stored, files):
    home = server.store.get("alice").home
    (home / "report.txt").write_bytes(b"old")
    token = login(web)
    response = upload(web, token, "report.txt", b"new", exists=choice, json_reply=True)
    assert response.status == 200, response.body
    reply = json.loads(response.body)
    assert reply["stored"] == ([stored] if stored else [])
    assert reply["skipped"] == ([] if stored else ["report.txt"])
    assert {p.name: p.read_bytes() for p in home.iterdir()} == files


def test_keep_both_counts_up(server, web):
    home = server.store.get("alice").home
    for name in ("a.txt", "a (1).txt", "a (2).txt"):
        (home / name).write_bytes(b"old")
    token = login(web)
    assert upload(web, token, "a.txt", b"new", exists="keep").status == 303
    assert (home / "a (3).txt").read_bytes() == b"new"
    assert "Uploaded 1 file(s): a.txt (as a (3).txt)." in web.get(b"/files/").body.decode()


def test_replace_needs_overwrite_permission(server, web):
    account = server.store.add("up", "pw", NO_OVERWRITE)
    (account.home / "r.txt").write_bytes(b"old")
    token = login(web, "up", "pw")
    response = upload(web, token, "r.txt", b"new", exists="replace", json_reply=True)
    assert response.status == 207
    assert "may not overwrite" in json.loads(response.body)["failed"]["r.txt"]
    assert (account.home / "r.txt").read_bytes() == b"old"
    # The refusal offers only what this account may choose.
    response = upload(web, token, "r.txt", b"new", json_reply=True)
    message = json.loads(response.body)["failed"]["r.txt"]
    assert "keep both" in message and "replace" not in message.split("Choose")[1]


def test_unknown_choice_means_refuse(server, web):
    home = server.store.get("alice").home
    (home / "r.txt").write_bytes(b"old")
    token = login(web)
    assert upload(web, token, "r.txt", b"new", exists="clobber", json_reply=True).status == 409
    assert (home / "r.txt").read_bytes() == b"old"


def test_numbered_name():
    assert numbered_name("report.txt", 1) == "report (1).txt"
    assert numbered_name("archive.tar.gz", 2) == "archive.tar (2).gz"
    assert numbered_name("README", 1) == "README (1)"
    assert numbered_name(".bashrc", 1) == ".bashrc (1)"


# -- rename never replaces by surprise ---------------------------------------

def test_rename_onto_taken_name_asks_first(server, web):
    home = server.store.get("alice").home
    (home / "f3.txt").write_bytes(b"three")
    (home / "report-final.txt").write_bytes(b"final")
    token = login(web)
    fields = {"csrf": token, "path": "/f3.txt", "name": "report-final.txt"}
    response = web.post_form(b"/rename", fields)
    assert response.status == 409
    assert b"already exists here. Replace it?" in response.body
    assert b"name=replace value=1" in response.body
    assert (home / "report-final.txt").read_bytes() == b"final"
    assert (home / "f3.txt").exists()
    response = web.post_form(b"/rename", fields, headers=JSON)
    assert response.status == 409
    assert json.loads(response.body)["conflict"] is True
    assert (home / "report-final.txt").read_bytes() == b"final"
    # Confirmed: replaced.
    response = web.post_form(b"/rename", dict(fields, replace="1"))
    assert response.status == 303
    assert (home / "report-final.txt").read_bytes() == b"three"
    assert not (home / "f3.txt").exists()
    assert server.audit.named("web.rename")[-1]["replaced"] is True


def test_rename_conflict_without_overwrite_offers_no_replace(server, web):
    account = server.store.add("up", "pw", NO_OVERWRITE)
    (account.home / "a").write_bytes(b"a")
    (account.home / "b").write_bytes(b"b")
    token = login(web, "up", "pw")
    response = web.post_form(b"/rename", {"csrf": token, "path": "/a", "name": "b"})
    assert response.status == 409
    assert b"may not replace files" in response.body
    assert b"name=replace" not in response.body
    response = web.post_form(b"/rename", {"csrf": token, "path": "/a", "name": "b",
                                          "replace": "1"})
    assert response.status == 303
    assert b"may not overwrite" in web.get(b"/files/").body
    assert (account.home / "b").read_bytes() == b"b"


def test_vfs_rename_without_replace(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    fs = JailedFS(tmp_path, frozenset({"rename", "overwrite"}))
    with pytest.raises(AlreadyExists):
        fs.rename("/a", "/b", replace=False)
    assert (tmp_path / "b").read_bytes() == b"b"
    fs.rename("/a", "/c", replace=False)
    assert (tmp_path / "c").read_bytes() == b"a"


# -- errors where the person is ----------------------------------------------

def test_errors_show_on_the_folder(server, web):
    home = server.store.get("alice").home
    (home / "sub").mkdir()
    (home / "sub" / "x").mkdir()
    token = login(web)
    response = web.post_form(b"/mkdir", {"csrf": token, "dir": "/sub", "name": "x"})
    assert response.status == 303 and response.header(b"location") == b"/files/sub/"
    page = web.get(b"/files/sub/").body.decode()
    assert "That did not work" not in page
    assert re.search(r"class='flash error' role=alert>Already exists", page)


def test_several_deleted_at_once(server, web):
    home = server.store.get("alice").home
    for name in ("a", "b", "c"):
        (home / name).write_bytes(b"x")
    token = login(web)
    confirm = web.get(b"/delete?dir=%2F&name=a&name=b").body
    assert b"Delete these 2 entries" in confirm and b"cannot be undone" in confirm
    body = b"csrf=" + token.encode() + b"&dir=%2F&name=a&name=b"
    response = web.request(b"POST", b"/delete", body=body,
                           headers={b"content-type": b"application/x-www-form-urlencoded"})
    assert response.status == 303
    assert sorted(p.name for p in home.iterdir()) == ["c"]
    assert [e["path"] for e in server.audit.named("web.delete")] == ["/a", "/b"]


def test_wrong_password_keeps_the_user_name(web):
    response = web.post_form(b"/login", {"username": "alice", "password": "nope"})
    assert response.status == 401
    assert b"name=username autocomplete=username value='alice'" in response.body
    assert b"autocomplete=current-password required autofocus" in response.body


def test_logout_says_so(web):
    token = login(web)
    response = web.post_form(b"/logout", {"csrf": token})
    assert response.status == 303
    page = web.get(response.header(b"location")).body
    assert b"You are logged out." in page


# -- ZIP download: refused before the first byte -------------------------------

def test_zip_refusals_show_on_the_folder(server, web):
    account = server.store.add("lister", "pw", frozenset({"list"}))
    (account.home / "f").write_bytes(b"x")
    login(web, "lister", "pw")
    response = web.get(b"/zip?dir=%2F&name=f")
    assert response.status == 303
    assert b"may not download" in web.get(b"/files/").body
    for query in (b"dir=%2F&name=..", b"dir=%2F&name=a%2Fb", b"dir=%2F"):
        response = web.get(b"/zip?" + query, headers=JSON)
        assert response.status == 400, query


def test_zip_missing_name_and_limit_per_account(server, web, site):
    (server.store.get("alice").home / "f").write_bytes(b"x")
    login(web)
    response = web.get(b"/zip?dir=%2F&name=missing", headers=JSON)
    assert response.status == 404
    zips = site.resource.children[b"zip"]
    zips.running["alice"] = 2
    response = web.get(b"/zip?dir=%2F&name=f", headers=JSON)
    assert response.status == 503 and b"Too many ZIP downloads" in response.body


def test_rows_link_relative_to_a_folder_url_ending_in_slash(server, web):
    home = server.store.get("alice").home
    (home / "sub").mkdir()
    (home / "sub" / "a b:c.txt").write_bytes(b"x")
    login(web)
    response = web.get(b"/files/sub?sort=size")
    assert response.status == 303
    assert response.header(b"location") == b"/files/sub/?sort=size"
    page = web.get(b"/files/sub/").body
    assert b"<a href='a%20b%3Ac.txt'>a b:c.txt</a>" in page
    assert b"/rename?path=%2Fsub%2Fa%20b%3Ac.txt" in page
    assert web.get(b"/files/sub/a%20b%3Ac.txt").body == b"x"


def test_zip_stays_in_each_accounts_jail(server, site):
    alice_home = server.store.get("alice").home
    (alice_home / "secret.txt").write_bytes(b"alice only")
    bob = server.store.add("bob", "pw", READ_ONLY)
    (bob.home / "mine.txt").write_bytes(b"bob")
    alice, other = HTTPDriver(site), HTTPDriver(site)
    login(alice)
    login(other, "bob", "pw")
    for query in (b"dir=%2F..%2Falice&name=secret.txt", b"dir=%2F&name=..",
                  b"dir=%2F&name=secret.txt", b"path=%2F..%2Falice%2Fsecret.txt"):
        response = other.get(b"/zip?" + query, headers=JSON)
        assert response.status in (400, 404), query
        assert b"alice only" not in response.body
        # alice's own session, same address, in between: unaffected
        assert b"secret.txt" in alice.get(b"/files/").body


def test_a_folder_page_is_rendered_off_the_reactor(server, web):
    """
    The HTML of a folder (seconds of work for 100,000 entries) is built in
    a thread, not on the reactor that serves every other client.
    """
    account = server.store.add("big", "pw", frozenset({"list", "download"}))
    for index in range(30):
        (account.home / f"f{index:02d}.txt").write_bytes(b"x")
    login(web, "big", "pw")
    server.threaded.clear()
    page = web.get(b"/files/").body
    assert "_next_piece" in server.threaded
    assert page.count(b"<tr") >= 30 and b"f29.txt" in page
