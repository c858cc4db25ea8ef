// The startup log's link carries the admin token in ?token=; the page prefills the field
// from it. Drop it from the address bar and history so it is not left lying around.
'use strict';
if (window.location.search) {
  window.history.replaceState(null, '', window.location.pathname);
}
